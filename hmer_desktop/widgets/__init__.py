"""Qt widgets: they render plain data (numpy, dataclasses) and never import torch."""
