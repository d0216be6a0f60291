"""The training wing: model / loader / optimizer builders, checkpoints and resume, multi-process
launch, CPU speed-ups and train_result.json. Used by the train runner.
"""
