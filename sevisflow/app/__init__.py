"""The application layer: the CLI, the all-in-one runner, the demo, and audit/verify.

It sits on top: it may import the core and every stage; nothing below imports it.
"""
