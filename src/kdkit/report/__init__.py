"""Results people can look at: the HTML report of several runs (`kdkit report`) and the model card
(README.md) that every finished run writes beside its model.

- ``collect``: reading run dirs (config, metrics, curves of logs/train.jsonl, their teacher);
- ``table``: the teacher-vs-students table; ``latency``: timing a fixed forward pass;
- ``figures``: PNG plots; ``html``: the page; ``build``: ``write_report``, the whole command;
- ``card``: the model card.
"""

from kdkit.report.build import write_report
from kdkit.report.card import write_model_card
from kdkit.report.latency import LatencySettings

__all__ = ["LatencySettings", "write_model_card", "write_report"]
