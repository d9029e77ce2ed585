"""Example data shipped with gmrseg (hippocampus MRI subset; see ``hippocampus/README.md``)."""
