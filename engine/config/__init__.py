"""The config wing: the typed schema of every key (schema), YAML + `-o` loading with file:line errors
(loader), and which folders a run may write into (output_folder).
"""
