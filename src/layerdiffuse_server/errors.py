"""One exception tree for the whole product.

    LayerDiffuseError                  base; carries an HTTP status, a fal error type, response headers
    ├── InvalidInputError              a request the engine cannot run as given (422)
    │   └── TargetRefused              outbound: a URL the address guard will not connect to
    ├── NotFoundError                  nothing at this address (404)
    ├── AuthenticationError            auth: no API key, or one this server does not know (401)
    ├── UploadUrlError                 api.storage_routes: an upload URL invalid, expired or used (403)
    ├── BodyTooLargeError              api.bodies: a request body over the limit (413)
    ├── UnsupportedContentError        files.content: a file's content type is not accepted (415)
    ├── QueueFullError                 the queue is at its limit (429, with Retry-After)
    ├── ServiceUnavailableError        nothing can run the request now (503)
    │   └── BodyMemoryFullError        api.body_budget: as many bodies in memory as this server holds
    ├── StoreError                     the database cannot be used (503)
    ├── StorageError                   files.blobs: the file store cannot be used (503)
    ├── WeightsError                   something wrong with model files (503)
    │   ├── MissingWeightsError        a file is neither on disk nor downloadable
    │   └── WeightFormatError          a file is there but its keys or shapes are wrong
    ├── GenerationCancelled            a run stopped between denoising steps on request (499)
    ├── ConfigurationError             server.bootstrap: settings that describe no service that can run
    │   └── InvalidSettings            cli.options: a setting's value that can never work (exit 2)
    ├── ListenError                    server.listeners: a listener that cannot be bound
    └── SigningKeyError                signing: the service's signing key cannot be used

Classes defined in another module name it (they belong with the code that raises them). Outside
the tree, on purpose:

    worker.generation_worker._Interrupted    the worker stopping mid-batch: control flow that never
                                             leaves the worker, so no handler of ours may catch it
    api.openai_images.errors.OpenAIError     an answer of the /v1 routes in OpenAI's error shape:
                                             raised and answered inside those routes only

A test walks the package and fails on an exception class that this drawing does not show where it
is (``tests/unit/test_error_tree.py``).

The HTTP layer translates these in one place; the engine and the CLI raise them with messages
written for the person who has to act on them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar


class LayerDiffuseError(Exception):
    """Something went wrong in layerdiffuse-server."""

    status_code: int = 500
    error_type: str = "internal_error"
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self)

    @property
    def public_message(self) -> str:
        """What a client may read; errors whose message names internals say less."""
        return self.message


class InvalidInputError(LayerDiffuseError):
    """The request's input is not valid."""

    status_code = 422
    error_type = "validation_error"

    def __init__(self, message: str, *, field: str | None = None, location: str = "body") -> None:
        super().__init__(message)
        self.field = field
        self.location = location  # "body", "query" or "header": the first element of fal's ``loc``


class NotFoundError(LayerDiffuseError):
    """There is nothing at this address."""

    status_code = 404
    error_type = "not_found"


class QueueFullError(LayerDiffuseError):
    """The queue is full; try again later."""

    status_code = 429
    error_type = "rate_limited"
    #: Clients that honour it come back once a few requests have had time to finish.
    headers: ClassVar[dict[str, str]] = {"Retry-After": "10"}


class ServiceUnavailableError(LayerDiffuseError):
    """Nothing can run this request now."""

    status_code = 503
    error_type = "runner_scheduling_failure"


class StoreError(LayerDiffuseError):
    """The database cannot be used."""

    status_code = 503
    error_type = "internal_error"

    @property
    def public_message(self) -> str:
        # The message names the database (an address, a user) for the operator's log, not for clients.
        return "The service's database is unavailable; try again later."


class WeightsError(LayerDiffuseError):
    """The model weights could not be loaded."""

    status_code = 503
    error_type = "runner_scheduling_failure"


class MissingWeightsError(WeightsError):
    """A weights file is not on disk and could not be downloaded."""


class WeightFormatError(WeightsError):
    """A weights file does not have the keys or shapes this model needs."""


class GenerationCancelled(LayerDiffuseError):
    """The generation was cancelled."""

    status_code = 499
    error_type = "client_cancelled"


def plain_message(message: str) -> str:
    """A validation message without the prefix pydantic puts on errors raised in validators."""
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def validation_details(errors: Sequence[Mapping[str, Any]], *, location: str | None = None) -> list[dict[str, Any]]:
    """pydantic errors as fal's 422 ``detail`` list: ``loc/msg/type``, plus ``input`` when it is plain JSON.

    ``location`` (e.g. ``"body"``) is put in front of each ``loc`` for errors of a model validated by hand.
    """
    details = []
    for problem in errors:
        loc = [location, *problem["loc"]] if location else list(problem["loc"])
        detail = {"loc": loc, "msg": plain_message(problem["msg"]), "type": problem["type"]}
        if is_plain_json_scalar(problem.get("input")):
            detail["input"] = problem["input"]
        details.append(detail)
    return details


def is_plain_json_scalar(value: Any) -> bool:
    """True for a value every JSON encoder writes and every reader reads back: no NaN or infinity,
    no string with a lone surrogate (which has no UTF-8 form)."""
    if value is None or isinstance(value, bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    return False
