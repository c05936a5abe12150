"""The notebook layer: thin IPython/ipywidgets views over the core.

Names are imported lazily, so ``import midori_hf_nb.notebook`` stays cheap.
"""

from __future__ import annotations

import importlib.util

from ..lazy import lazy_exports

#: what the notebook layer needs beyond the core: the ``notebook`` extra of the package
NOTEBOOK_REQUIREMENTS = ("IPython", "ipywidgets", "ipykernel", "nest_asyncio2", "matplotlib", "markdown_it", "pygments", "nh3")

_missing = [name for name in NOTEBOOK_REQUIREMENTS if importlib.util.find_spec(name) is None]
if _missing:
    raise ImportError(
        f"midori_hf_nb.notebook needs {', '.join(_missing)}, which this environment lacks: "
        "pip install 'midori-hf-nb[notebook]' (the core, midori_hf_nb, works without them)"
    )

#: public name -> module (relative to this package) that defines it
_EXPORTS: dict[str, str] = {
    # aio: running the async API from synchronous code
    "run": ".aio",
    "iterate": ".aio",
    "loop_running": ".aio",
    "enable_nesting": ".aio",
    "SyncAgent": ".aio",
    # streaming into a cell
    "stream_to_cell": ".streaming",
    "display_stream": ".streaming",
    "LiveView": ".streaming",
    "DisplayStats": ".streaming",
    "StreamState": ".stream_view",
    "RecordingSink": ".sinks",
    "render_stream_html": ".stream_view",
    # rich display of responses
    "ResponseView": ".display",
    "render_response_html": ".display",
    "render_response_markdown": ".display",
    # calling any protocol agent
    "open_event_stream": ".agent_calls",
    "EventStream": ".agent_calls",
    # escaping of untrusted text for every view
    "escape_html": ".escaping",
    "escape_markdown": ".escaping",
    "markdown_code_block": ".escaping",
    # answers as safe Markdown
    "render_markdown_html": ".markdown",
    "markdown_for_export": ".markdown",
    "IncrementalMarkdown": ".markdown",
    # DataFrames
    "tool_calls_frame": ".frames",
    "thinking_frame": ".frames",
    "conversation_frame": ".frames",
    "TOOL_CALL_COLUMNS": ".frames",
    "THINKING_COLUMNS": ".frames",
    "TURN_COLUMNS": ".frames",
    # conversation memory
    "Conversation": ".conversation",
    # memory readout
    "memory_readout": ".memory",
    "MemoryReadout": ".memory",
    # chat panel widget
    "ChatPanel": ".chat",
    # prompt comparison views
    "comparison_view": ".compare_view",
    "results_view": ".compare_view",
    "plot_comparison": ".compare_view",
    # evaluation views
    "scoreboard": ".evaluate_view",
    "plot_scores": ".evaluate_view",
    "answers_view": ".evaluate_view",
    "drill_down": ".evaluate_view",
    "DrillDown": ".evaluate_view",
    # the call log's views
    "log_view": ".log_view",
    "conversation_view": ".log_view",
    # magics
    "MidoriMagics": ".magics",
    "MidoriSession": ".magics",
    "current_session": ".magics",
    "load_ipython_extension": ".magics",
    "unload_ipython_extension": ".magics",
}


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
__all__ = sorted(_EXPORTS)

# Calls made from a notebook are logged with its path, the cell's id and its execution count.
from .log_origin import install as _install_log_origin  # noqa: E402

_install_log_origin()
