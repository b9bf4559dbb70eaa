"""The quality loop: the LLM judge (`llm-judge-v1`), thresholds that act on its verdicts,
teachers' ratings, the judge's calibration, and A/B experiments ranked by quality per dollar.

Modules: `prompt` (the judge's rubric prompt), `judge` (one verdict, no database), `judging`
(the judge's runs on a finished course), `thresholds` (what a low verdict triggers), and more as
they land. Other modules import the module they need (`from generation.quality import judging`).
"""
