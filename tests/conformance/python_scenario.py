"""Drives the server with the unmodified ``fal_client`` (configured by environment variables only,
as a user would) and prints one JSON line describing what happened."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import fal_client
import httpx

APP = "fal-ai/layer-diffusion"


def describe(error: Exception) -> dict[str, Any]:
    if isinstance(error, fal_client.FalClientHTTPError):
        return {
            "kind": "FalClientHTTPError",
            "status": error.status_code,
            "detail": error.message,
            "type": error.error_type,
        }
    return {"kind": type(error).__name__, "message": str(error)}


def status_json(status: Any) -> dict[str, Any]:
    return {"type": type(status).__name__, **{k: v for k, v in vars(status).items()}}


def run(args: dict) -> dict:
    return {"output": fal_client.run(APP, args["input"])}


def subscribe(args: dict) -> dict:
    updates: list[dict] = []
    enqueued: list[str] = []
    output = fal_client.subscribe(
        APP,
        args["input"],
        with_logs=True,
        on_enqueue=enqueued.append,
        on_queue_update=lambda status: updates.append(status_json(status)),
    )
    return {"output": output, "updates": updates, "request_ids": enqueued}


def submit(args: dict) -> dict:
    handle = fal_client.submit(
        APP,
        args["input"],
        webhook_url=args.get("webhook_url"),
        priority=args.get("priority"),
        start_timeout=args.get("start_timeout"),
    )
    return {"request_id": handle.request_id, "status": status_json(handle.status())}


def run_many(args: dict) -> dict:
    """Every input submitted at once, then each result: the way a batch job uses the client."""
    handles = [fal_client.submit(APP, arguments) for arguments in args["inputs"]]
    return {"outputs": [handle.get() for handle in handles]}


def submit_and_get(args: dict) -> dict:
    handle = fal_client.submit(APP, args["input"], webhook_url=args.get("webhook_url"))
    events = [status_json(event) for event in handle.iter_events(with_logs=True, interval=0.05)]
    output = handle.get()
    again = fal_client.result(APP, handle.request_id)
    final = fal_client.status(APP, handle.request_id, with_logs=True)
    return {
        "request_id": handle.request_id,
        "events": events,
        "output": output,
        "again": again,
        "final": status_json(final),
    }


def status(args: dict) -> dict:
    return {"status": status_json(fal_client.status(APP, args["request_id"], with_logs=True))}


def result(args: dict) -> dict:
    return {"output": fal_client.result(APP, args["request_id"])}


def cancel(args: dict) -> dict:
    fal_client.cancel(APP, args["request_id"])
    return {"cancelled": True}


def uploads(args: dict) -> dict:
    path = Path(args["file"])
    urls = {
        "upload": fal_client.upload(path.read_bytes(), "image/png", file_name="bytes.png"),
        "upload_file": fal_client.upload_file(path),
        "fallback": fal_client.upload(path.read_bytes(), "image/png", repository="fal"),
    }
    downloads = {name: httpx.get(url) for name, url in urls.items()}
    return {
        "urls": urls,
        "same_bytes": {name: response.content == path.read_bytes() for name, response in downloads.items()},
        "content_types": {name: response.headers.get("content-type") for name, response in downloads.items()},
    }


def text_uploads(args: dict) -> dict:
    """Any file goes, as on fal: a text file by each of the client's ways, downloaded as served."""
    path = Path(args["file"])
    urls = {
        "upload_file": fal_client.upload_file(path),
        "upload": fal_client.upload(b"Hello, World!", "text/plain", file_name="hello.txt"),
        "fallback": fal_client.upload(b"Hello, World!", "text/plain", file_name="hello.txt", repository="fal"),
    }
    served = {}
    for name, url in urls.items():
        response = httpx.get(url)
        served[name] = {"status": response.status_code, "text": response.text, **dict(response.headers)}
    return {"urls": urls, "served": served}


def lora_uploads(args: dict) -> dict:
    """A LoRA file uploaded by the client's two ways, as a user gives one before naming its URL in ``loras``."""
    path = Path(args["file"])
    return {
        "urls": {
            "upload_file": fal_client.upload_file(path),
            "upload": fal_client.upload(path.read_bytes(), "application/octet-stream", file_name="bytes.safetensors"),
        }
    }


def lora_runs(args: dict) -> dict:
    """A LoRA uploaded with ``upload_file``, then the same input run without it, with it and at scale 0:
    the SHA-256 of each result's PNG, as downloaded from its URL."""
    import hashlib

    url = fal_client.upload_file(Path(args["file"]))
    digests = {}
    for name, loras in {
        "none": [],
        "styled": [{"path": url, "scale": 1.5}],
        "zero": [{"path": url, "scale": 0}],
    }.items():
        output = fal_client.subscribe(APP, {**args["input"], "loras": loras})
        digests[name] = hashlib.sha256(httpx.get(output["image"]["url"]).content).hexdigest()
    return {"url": url, "digests": digests}


def layer(args: dict) -> dict:
    """An endpoint with image inputs: the first image uploaded with ``upload_file`` (its URL is sent),
    the others sent inline as data: URIs (``encode_file``), the client's two ways of passing a file."""
    files = dict(args["files"])
    first, *others = files
    image_input = {first: fal_client.upload_file(Path(files[first]))}
    image_input |= {name: fal_client.encode_file(Path(files[name])) for name in others}
    output = fal_client.subscribe(f"{APP}/{args['path']}", args["input"] | image_input, with_logs=True)
    return {"output": output}


def main() -> None:
    scenario, arguments = sys.argv[1], json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")
    try:
        outcome = {"ok": True, **globals()[scenario](arguments)}
    except Exception as error:
        outcome = {"ok": False, "error": describe(error)}
    print(json.dumps(outcome, default=str))


if __name__ == "__main__":
    main()
