"""Export stage: merge adapters into a full-precision base, verify, and package for serving."""
