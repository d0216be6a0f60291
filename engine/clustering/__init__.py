"""Grouping faces by person: the graph algorithms (graph), the persisted collection of faces and
clusters with its incremental, naming, merging and splitting operations (book), and the files a
clustering writes for people to look at (pictures)."""
