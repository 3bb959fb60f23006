"""The web app (``make app``): see on a clip whether a trained model listens.

Modules: :mod:`app.server` (the Gradio page and its launch), :mod:`app.handlers` (what each button
does), :mod:`app.predictor` (the one boundary to :mod:`train.predict` and the cue stage),
:mod:`app.views` (pictures and tables of a prediction), :mod:`app.reports` (the reports tab),
:mod:`app.uploads` (what is accepted, and deleting every upload). Needs the ``app`` extra (Gradio).
"""
