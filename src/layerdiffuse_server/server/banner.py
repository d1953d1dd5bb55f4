"""What ``layerdiffuse serve`` prints at start: where it listens and how to point each client at it."""

from __future__ import annotations

from rich.console import Console

from ..auth import IssuedKey
from ..settings import Settings
from .tls import TlsFiles


def print_banner(settings: Settings, tls: TlsFiles | None, first_key: IssuedKey | None, *, role: str = "serve") -> None:
    console = Console(highlight=False, soft_wrap=True)
    reach = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    key = first_key.value if first_key else "<your key>"
    what = f"model [bold]{settings.model}[/]" if role == "serve" else "API node (workers run apart)"
    console.print(f"[bold]layerdiffuse-server[/] · fal-ai/layer-diffusion · {what}")
    console.print(f"  [bold]http://{reach}:{settings.port}/[/]   playground: open it in a browser, paste the key below")
    console.print(f"  http://{reach}:{settings.port}/docs   API reference (OpenAPI)")
    console.print(f"  http://{reach}:{settings.port}/metrics   Prometheus metrics; /healthz, /readyz for probes")
    if tls is not None and settings.tls_port:
        ca = f" (trust {tls.ca})" if tls.ca else ""
        console.print(f"  https://{reach}:{settings.tls_port}{ca}")
    if settings.database_url is None or settings.storage_url is None:
        console.print(f"  data: {settings.data_dir}")
    if first_key:
        console.print(f"\n[bold yellow]Admin API key (shown only now, keep it):[/] {first_key.value}")
    if tls is not None and settings.tls_port:
        host = f"{reach}:{settings.tls_port}"
        console.print("\nPython (fal_client):")
        env = f"FAL_KEY={key} FAL_RUN_HOST={host}/run FAL_QUEUE_RUN_HOST={host}/queue"
        if tls.ca:
            env += f" SSL_CERT_FILE={tls.ca}"
        console.print(f"  export {env}")
    console.print("\nJavaScript (@fal-ai/client):")
    console.print(
        f'  fal.config({{ credentials: "{key}", '
        f'proxyUrl: {{ url: "http://{reach}:{settings.port}/api/fal/proxy", when: "always" }} }})\n'
    )
