"""The embedded demo: a synthetic 3D dataset and the plan -> train -> predict -> evaluate walk-through."""
