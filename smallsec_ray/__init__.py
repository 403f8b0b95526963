"""smallsec-ray: large models teach small security classifiers, on Ray."""
