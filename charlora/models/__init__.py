"""Base models: the tiny offline test model, SD checkpoint layouts, and loading."""
