"""Training and evaluation of the SE models: input pipeline, recipes, entry points."""
