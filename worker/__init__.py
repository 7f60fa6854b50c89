"""Layer: worker — the agent-group process: hosts many WebAssembly agents.

May import shm_protocol (and, through it, native); never orchestrator.
"""
