"""The evaluation wing: verification metrics over numpy (10-fold accuracy, ROC, TAR@FAR) and pair
scoring of a feature model on val pairs or insightface .bin files.
"""
