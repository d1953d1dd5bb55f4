"""Turning an HTTP call into a request for the manager: fal's platform headers and the webhook target.

Input errors of a queued request are recorded as its outcome (status COMPLETED with a 422 result),
as fal's queue does; the sync run answers them at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import anyio
from pydantic import ValidationError
from starlette.datastructures import Headers

from ..endpoints import ENDPOINTS, Endpoint, stored_input
from ..errors import InvalidInputError
from ..lifecycle import Submission, outcomes
from ..outbound import check_webhook_url
from ..schemas import LayerDiffusionInput, image_fields
from ..store.contracts import Completion, Priority, RequestRecord
from .bodies import input_body_limit
from .services import Services

logger = logging.getLogger(__name__)


def parse_priority(headers: Headers) -> Priority:
    value = headers.get("x-fal-queue-priority", "normal").strip().lower()
    try:
        return Priority[value]
    except KeyError:
        raise InvalidInputError(
            f"must be 'normal' or 'low', got {value!r}", field="x-fal-queue-priority", location="header"
        ) from None


def parse_start_deadline(headers: Headers, now: float) -> float | None:
    value = headers.get("x-fal-request-timeout")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 10**9:
        raise InvalidInputError(
            f"must be a positive number of seconds, got {value!r}", field="x-fal-request-timeout", location="header"
        )
    return now + seconds


def endpoint_body_limit(services: Services, endpoint: Endpoint) -> int:
    """How large a body the endpoint reads (room for its images as data: URIs)."""
    return input_body_limit(len(endpoint.image_fields), services.settings.max_upload_bytes)


#: Strings longer than this are not kept in the stored input of a refused request (a data: URI).
MAX_KEPT_STRING = 4096


def storable(raw_input: dict[str, Any]) -> dict[str, Any]:
    """A refused request's input as it is kept for its result and gallery: long strings (inline
    images, mostly) replaced by a note of their length."""
    return {
        name: f"<{len(value)} characters, not stored>"
        if isinstance(value, str) and len(value) > MAX_KEPT_STRING
        else value
        for name, value in raw_input.items()
    }


def checked_input(
    endpoint: Endpoint, raw_input: dict[str, Any], *, mode: str, checkpoints: Iterable[str] = ()
) -> LayerDiffusionInput | Completion:
    """The request's parameters (see :meth:`Endpoint.admitted_params`), built once for its whole life;
    invalid input is the 422 outcome a queued request completes with, while a sync run raises it.
    ``checkpoints``: the names the operator lists, which a ``model_name`` must be one of.

    Raises:
        pydantic.ValidationError: invalid input of a sync run (answered 422 at once, nothing stored).
    """
    try:
        return endpoint.admitted_params(raw_input, checkpoints=checkpoints)
    except ValidationError as error:
        if mode == "sync":
            raise
        return outcomes.invalid_input(error)


def admit(
    services: Services,
    key_id: str,
    raw_input: dict[str, Any],
    headers: Headers,
    *,
    checked: LayerDiffusionInput | Completion,
    endpoint: Endpoint = ENDPOINTS[0],
    webhook_url: str | None = None,
    mode: str = "queue",
    fetch: bool = True,
) -> RequestRecord:
    """Store a new request (queued, or already completed when its input is invalid). Blocking:
    the webhook target is resolved, image inputs are fetched and stored, and the store written.

    ``checked`` is what :func:`checked_input` made of ``raw_input``. The header and webhook checks
    come first, so nothing is fetched for a request they refuse. An image input that cannot be read
    is answered at once on a sync run and, on the queue, as the request's result (like every input
    error there); copies stored for a request that is then refused (a full queue, say) are deleted
    again.
    """
    priority = parse_priority(headers)
    webhook = check_webhook_url(webhook_url, services.webhook_networks) if webhook_url is not None else None
    start_deadline = parse_start_deadline(headers, services.manager.clock.time())
    created: list[str] = []
    params = checked if isinstance(checked, LayerDiffusionInput) else None
    rejection = checked if isinstance(checked, Completion) else None
    if params is not None and (fields := image_fields(params)):
        try:
            stored = services.store_image_inputs(raw_input, fields, key_id=key_id, created=created, fetch=fetch)
        except InvalidInputError as error:
            services.discard_copies(created)
            if mode == "sync":
                raise
            params, rejection = None, outcomes.rejected_input(error)
        except BaseException:  # the store or the database failed midway: no copy may outlive the request
            try:
                services.discard_copies(created)
            except Exception:
                logger.warning("could not discard the image copies %s of a refused request", created, exc_info=True)
            raise
        else:
            params = params.model_copy(update={name: stored[name] for name in fields if name in stored})
    submission = Submission(
        key_id=key_id,
        app_id=endpoint.app_id,
        input=stored_input(params) if params is not None else storable(raw_input),
        params=params,
        rejection=rejection,
        priority=priority,
        webhook_url=webhook,
        start_deadline=start_deadline,
    )
    try:
        record = services.manager.submit(submission)
    except BaseException:
        services.discard_copies(created)
        raise
    services.metrics.submitted.labels(mode).inc()
    return record


async def admit_in_lane(
    services: Services,
    key_id: str,
    raw_input: dict[str, Any],
    headers: Headers,
    *,
    endpoint: Endpoint,
    webhook_url: str | None = None,
    mode: str = "queue",
) -> RequestRecord:
    """:func:`admit` off the event loop: requests with image inputs in their lane (inline images never
    wait behind external fetches, see :mod:`.admission_lanes`), others in the common thread pool.
    The input is checked here, once, before it waits for a lane (a sync run's invalid input raises
    its 422 at once)."""
    checked = checked_input(endpoint, raw_input, mode=mode, checkpoints=services.settings.checkpoints)

    def admitted(fetch: bool) -> RequestRecord:
        return admit(
            services,
            key_id,
            raw_input,
            headers,
            checked=checked,
            endpoint=endpoint,
            webhook_url=webhook_url,
            mode=mode,
            fetch=fetch,
        )

    if not endpoint.image_fields:
        return await anyio.to_thread.run_sync(admitted, True)
    fetches = await anyio.to_thread.run_sync(services.needs_fetching, raw_input, endpoint.image_fields)
    return await services.admission_lanes().run(key_id, fetches, lambda: admitted(fetches))
