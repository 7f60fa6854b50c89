"""Exception hierarchy of the inference package.

Only *configuration* problems raise (bad model files, an explicitly requested
provider that is missing).  Problems caused by an agent's request never raise:
they become error `Result`s (see `_payloads.Status`).
"""

from __future__ import annotations


class InferenceError(Exception):
    """Root of every exception raised by `wasm_engine.inference`."""


class ModelLoadError(InferenceError):
    """A model (or its tokenizer) could not be loaded or has the wrong layout.

    The message always names the model id, the path and what to do about it.
    """

    def __init__(self, model_id: str, path: object, problem: str, hint: str) -> None:
        self.model_id = model_id
        self.path = str(path)
        self.problem = problem
        self.hint = hint
        super().__init__(f"model {model_id!r} ({self.path}): {problem}. {hint}")


class ProviderUnavailableError(InferenceError):
    """An execution provider that was explicitly required cannot be used."""
