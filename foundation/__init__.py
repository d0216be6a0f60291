"""The bottom layer: what every other package needs and nothing of ours is imported by.

    errors      UserError, ConfigError, DatasetError (one line to the user, their exit code)
    atomic_io   write to a temporary name and rename; move a finished folder into place; downloads
    logger      the console and the run's log file
    progress    a progress bar with rate and ETA
    runtime     CPU facts, threads, device, seeds, the cache folder
"""
