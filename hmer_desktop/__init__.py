"""The hmer desktop app (Qt). Widgets receive plain data from model.prediction, never torch objects."""
