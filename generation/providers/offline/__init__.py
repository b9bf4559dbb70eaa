"""Offline provider: a SIMULATOR of an LLM provider, not a language model.

It makes no network calls and needs no key. The demo, the tests, the benchmark and fault-injection
runs use it in place of a real model. Every response is built from templates filled with the facts
the pipeline puts in `CompletionRequest.context` (topic, level, place in the outline, learning
objectives ...), so the content reads like templated teaching prose about the topic and is the
same every time for the same topic, task kind, outline position and COURSEGEN_OFFLINE_SEED.

What it does simulate closely is how a real provider behaves:

* output that validates against the request's schema and passes the content checks, sized like
  real course content; a request for one part (`context["part"]`, targeted regeneration) gets that
  part alone, and a `variant` (a regenerated version) draws different content;
* token usage counted with tiktoken, including prompt-cache hits when a long system prompt repeats;
* latency: a per-tier time to first token plus output tokens at a per-tier rate, times a scale;
* injected faults (429, 503, timeouts, truncated JSON, schema-invalid JSON with one varied
  mistake in one part), a file-driven outage, and cut-off output when `max_output_tokens` is too
  small;
* an optional call log, one JSON line per call, safe across threads and processes.

Content is always English whatever `language` says, and free-text `instructions` are ignored.

One module per job: `provider` (the steps of a call), `content/` (templated content, one module
per task kind), `latency` (the latency model), `faults` (fault rates, the outage file, invalid
variants), `ratelimit` (rate-limit emulation), `usage` (token counts and the prompt cache),
`calllog` (the call log) and `seeding` (deterministic random streams).
"""

from generation.providers.offline.content import build_content
from generation.providers.offline.faults import FAULT_KINDS, FaultRates, make_invalid
from generation.providers.offline.latency import DEFAULT_LATENCY, TierLatency
from generation.providers.offline.provider import OfflineProvider

__all__ = [
    "DEFAULT_LATENCY",
    "FAULT_KINDS",
    "FaultRates",
    "OfflineProvider",
    "TierLatency",
    "build_content",
    "make_invalid",
]
