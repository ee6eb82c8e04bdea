"""Run the walkthrough notebooks with papermill and build one HTML report from them.

Notebooks store figures as plotly JSON only (small files). ``OfflineHTMLExporter`` turns them into
drawn figures with plotly.js embedded once per page, so every exported page works offline; it is
also registered as the nbconvert exporter ``kit_html`` (``jupyter nbconvert --to kit_html NB``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from kit import paths
from kit.errors import KitError, MissingDependencyError

NOTEBOOKS = paths.NOTEBOOKS


def notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]-*.ipynb"))


def run_walkthrough(out_dir: str | Path, parameters: dict[str, Any], only: list[str] | None = None,
                    timeout: int = 600) -> Path:
    """Execute the notebooks in order into ``out/executed/``; write ``out/report.html``; return its path."""
    try:
        import papermill
    except ImportError:
        raise MissingDependencyError("papermill", "notebooks") from None
    out = Path(out_dir).resolve()
    executed = out / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    os.environ["KIT_OUT"] = str(out)  # the notebooks' results files go here
    # Local state is per user, wherever a kernel runs; only a relative $KIT_STATE_DIR would be read from ``out``.
    if os.environ.get("KIT_STATE_DIR"):
        os.environ["KIT_STATE_DIR"] = str(paths.state_dir())
    chosen = [nb for nb in notebooks() if not only or nb.stem in only or nb.name in only]
    done = []
    for nb in tqdm(chosen, desc="notebooks", unit="nb"):
        declared = papermill.inspect_notebook(str(nb))
        params = {k: v for k, v in parameters.items() if k in declared}
        target = executed / nb.name
        tqdm.write(f"running {nb.name} → {target}")
        try:
            papermill.execute_notebook(str(nb), str(target), parameters=params, kernel_name="python3", cwd=str(out),
                                       progress_bar=False, execution_timeout=timeout,
                                       kernel_manager_class="kit.experiments.report.QuietKernelManager")
        except papermill.PapermillExecutionError as err:
            raise KitError(f"{nb.name} failed in cell {err.exec_count}: {err.ename}: {err.evalue} "
                           f"(executed notebook: {target})") from None
        done.append(target)
    return build_report(done, out / "report.html")


def build_report(executed: list[Path], target: Path) -> Path:
    """One HTML page holding every executed notebook, figures included (plotly.js embedded: offline)."""
    import nbformat

    merged = nbformat.v4.new_notebook()
    merged.metadata = nbformat.read(str(executed[0]), as_version=4).metadata if executed else {}
    merged.metadata.pop("papermill", None)
    for i, path in enumerate(executed):
        nb = nbformat.read(str(path), as_version=4)
        merged.cells.append(nbformat.v4.new_markdown_cell(f"<hr/>\n\n*Notebook `{path.name}`*"))
        for cell in nb.cells:
            if "injected-parameters" not in cell.get("metadata", {}).get("tags", []):
                cell["id"] = f"nb{i}-{cell.get('id', len(merged.cells))}"
                merged.cells.append(cell)
    exporter = OfflineHTMLExporter()
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(merged)
    target.write_text(body)
    return target


PLOTLY_MIME = "application/vnd.plotly.v1+json"


def draw_figures(nb: Any) -> int:
    """Give every plotly output an HTML rendering, plotly.js embedded in the first only; returns how many."""
    import plotly.io as pio

    drawn = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if PLOTLY_MIME in data and "text/html" not in data:
                data["text/html"] = pio.to_html(data[PLOTLY_MIME], include_plotlyjs=drawn == 0, full_html=False,
                                                default_width="100%", validate=False)
                drawn += 1
    return drawn


try:
    from nbconvert import HTMLExporter

    class OfflineHTMLExporter(HTMLExporter):
        """HTML with every plotly figure drawn and plotly.js embedded once: opens offline."""

        export_from_notebook = "Kit_html"

        def from_notebook_node(self, nb: Any, resources: Any = None, **kw: Any) -> tuple[str, Any]:
            nb = copy.deepcopy(nb)
            draw_figures(nb)
            return super().from_notebook_node(nb, resources, **kw)

except ImportError:  # without the notebooks extra there is nothing to export
    OfflineHTMLExporter = None  # type: ignore[assignment,misc]

try:
    from jupyter_client.manager import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        """Kernels talk over local sockets (IPC), not TCP: nothing listens on the network, and ipykernel
        has no reason to warn about unencrypted TCP in every headless run."""

        transport = "ipc"  # type: ignore[assignment]

except ImportError:  # without the notebooks extra there is nothing to run
    QuietKernelManager = None  # type: ignore[assignment,misc]
