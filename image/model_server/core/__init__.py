"""The model core: the artifact and its signature, checked batches, codecs, compiled plans, the runner,
explanations, drift, the loaded model and its prediction queue. Knows nothing of HTTP or gunicorn.
"""
