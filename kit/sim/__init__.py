"""A vLLM-compatible model-server simulator: OpenAI API, vLLM metrics, continuous batching, prefix cache.

Library first: ``config`` (settings), ``tokenizer``, ``kvcache``, ``engine`` (steppable by hand or on a
virtual clock) and ``metrics`` need no server; ``server`` is the HTTP face (``kit sim``). Nothing here
imports the picker or the gateway.
"""
