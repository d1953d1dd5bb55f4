"""A request's parameters are built once, at admission: validated, the seed drawn and stored with the
request, so every run of it (a retry after a lost worker too) draws the same image; rows stored by
older releases, with the input as received and no seed, still run."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from layerdiffuse_server.endpoints import APP_ID, ENDPOINTS, endpoint_at, run_params, stored_input
from layerdiffuse_server.lifecycle import RequestManager, Submission
from layerdiffuse_server.schemas import GenerationParams, ImageToImageInput
from layerdiffuse_server.store import RequestState, Store


def test_admission_draws_the_seed_and_stores_it_with_what_the_client_set() -> None:
    params = ENDPOINTS[0].admitted_params({"prompt": "a red star", "guidance_scale": 5})
    assert isinstance(params.seed, int) and params.fixed_seed == params.seed
    assert stored_input(params) == {"prompt": "a red star", "guidance_scale": 5.0, "seed": params.seed}
    assert ENDPOINTS[0].admitted_params({"seed": 7}).seed == 7


def test_the_api_checks_apply_at_admission_only() -> None:
    image_to_image = endpoint_at("image-to-image")
    with pytest.raises(ValidationError, match="image_url"):
        image_to_image.admitted_params({"image_url": "/local/path.png"})
    assert image_to_image.admitted_params({"image_url": "/local/path.png"}, from_api=False).seed is not None


def test_the_worker_runs_the_stored_seed_with_its_size_fixed() -> None:
    params = ENDPOINTS[0].admitted_params({"prompt": "x", "width": 96})
    again = run_params(APP_ID, stored_input(params), native_size=128)
    assert isinstance(again, GenerationParams)
    assert again.seed == params.seed and again.size == (96, 128)


def test_a_row_of_an_older_release_without_a_seed_still_runs() -> None:
    params = run_params(APP_ID, {"prompt": "x"}, native_size=1024)
    assert params.seed is not None and params.size == (1024, 1024)
    image = run_params(f"{APP_ID}/image-to-image", {"image_url": "https://x/a.png"}, native_size=1024)
    assert isinstance(image, ImageToImageInput) and image.seed is not None and image.width is None


def test_the_manager_stores_the_seed_of_a_submission_it_validates(store: Store) -> None:
    manager = RequestManager(store, max_queue_length=10, max_attempts=2, lease_seconds=30)
    record = manager.submit(Submission(key_id="k", app_id=APP_ID, input={"prompt": "x"}))
    assert record.state is RequestState.QUEUED and isinstance(record.input["seed"], int)
    params = ENDPOINTS[0].admitted_params({"prompt": "y", "seed": 3})
    given = manager.submit(Submission(key_id="k", app_id=APP_ID, input=stored_input(params), params=params))
    assert given.input == {"prompt": "y", "seed": 3} and given.batch_key == "nativexnative:20:dpmpp_2m_karras:8.0"
