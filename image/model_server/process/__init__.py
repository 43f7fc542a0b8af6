"""The process: gunicorn's gevent worker made safe for hostile clients and for shutdown, keep-alive
fairness, and the WSGI entry point gunicorn loads.
"""
