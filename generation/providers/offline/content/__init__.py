"""The simulator's content: templated teaching prose about the request's topic, one module per
task kind, schema-valid and deterministic for (topic, kind, outline position, seed, variant)."""

from generation.providers.offline.content.build import build_content, part_content
from generation.providers.offline.content.facts import Data

__all__ = ["Data", "build_content", "part_content"]
