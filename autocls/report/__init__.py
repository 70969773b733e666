"""Figures, tables, evaluation on labelled images and the HTML report of a study and its model."""
