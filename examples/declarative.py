"""Declarative: a blueprint as data (TypeScript Flowcraft JSON, camelCase keys) plus implementations
registered by their ``uses`` key.

    python examples/declarative.py

``maxRetries`` is the total number of attempts and ``retryDelay``/``timeout`` are milliseconds, exactly as in
the TypeScript Flowcraft, so its blueprints load unchanged. Check one with ``flowcraft lint FILE`` and draw it
with ``flowcraft graph FILE``.
"""

from __future__ import annotations

from typing import Any

from flowcraft import App, Blueprint, FlowRuntime, NodeContext

BLUEPRINT = """
{
  "id": "summarize-article",
  "metadata": {"version": "2"},
  "nodes": [
    {"id": "load", "uses": "http-fetch", "params": {"url": "https://example.com/article"}},
    {"id": "summarize", "uses": "llm-process", "params": {"prompt": "Summarize in one line"},
     "config": {"maxRetries": 3, "retryDelay": 200, "timeout": 30000, "fallback": "canned"}},
    {"id": "keywords", "uses": "llm-process", "params": {"prompt": "Three keywords"}},
    {"id": "canned", "uses": "canned-summary"},
    {"id": "publish", "uses": "publish", "config": {"joinStrategy": "all"}}
  ],
  "edges": [
    {"source": "load", "target": "summarize"},
    {"source": "load", "target": "keywords", "condition": "result.output.words > 100",
     "transform": "{'text': input.text[:200], 'words': input.words}"},
    {"source": "summarize", "target": "publish"},
    {"source": "keywords", "target": "publish"}
  ]
}
"""


async def http_fetch(ctx: NodeContext) -> dict[str, Any]:
    text = f"Text fetched from {ctx.params['url']}. " * 40
    return {"text": text, "words": len(text.split())}


async def llm_process(ctx: NodeContext) -> str:
    # one implementation serves two nodes; params tell them apart
    return f"{ctx.params['prompt']}: {ctx.input['text'][:32]}..."


async def canned_summary(ctx: NodeContext) -> str:
    return "summary unavailable"


async def publish(ctx: NodeContext) -> dict[str, Any]:
    # an `all` join with several predecessors receives {predecessor id: its output}
    return {"published": True, **ctx.input}


registry = {"http-fetch": http_fetch, "llm-process": llm_process, "canned-summary": canned_summary,
            "publish": publish}
blueprint = Blueprint.from_json(BLUEPRINT)
app = App(blueprints=[blueprint], registry=registry)

if __name__ == "__main__":
    runtime = FlowRuntime(blueprints=[blueprint], registry=registry)
    result = runtime.run_sync("summarize-article")
    print(result.status)
    print(result.output)
