"""Refactoring guard: a seeded tiny run of every registered method (and of each family's fine-tuning)
ends with the same weights and metrics as it did before kdkit's run pipeline was redesigned.

The reference values below were recorded with ``python -m tests.method_runs`` on the code as it stood before
the redesign (commit fbb47f1). A change that is *meant* to alter training must re-record them and say why.
Since then only keys were added (``bits_per_byte``, ``bits_per_char`` of the causal-LM runs, ReAugKD's
``retrieval_diagnostics``) and the ``uld`` run (recorded when the method was added); every value recorded on
fbb47f1 is unchanged.
Runs are compared up to float rounding (relative 1e-4): a different order of random draws, a missing loss
term or a different data order moves these numbers by far more.
"""

from __future__ import annotations

from typing import Any

import pytest

from kdkit.methods import METHODS
from tests.method_runs import RUNS, signature

pytestmark = pytest.mark.integration

REFERENCE: dict[str, Any] = {
    "uld": {  # recorded when ULD was added (commit after a39c48f), not on fbb47f1
        "metrics": {
            "best_step": 10,
            "kind": "distill",
            "method": "uld",
            "parameters": 20640,
            "steps": 10,
            "teacher": {
                "validation": {
                    "bits_per_byte": 1.6628736,
                    "bits_per_char": 1.6628736,
                    "perplexity": 42.351445,
                    "rouge_l": 0.0,
                }
            },
            "teacher_parameters": 39200,
            "truncated": {"train": 0},
            "validation": {
                "bits_per_byte": 1.0684234,
                "bits_per_char": 1.0684234,
                "perplexity": 11.09914,
                "rouge_l": 34.375,
            },
        },
        "weights": [20.0, 166.19677152136865, 183.94261978271965, 3.3691137420859394],
    },
    "atkd": {
        "metrics": {
            "best_step": 10,
            "kind": "distill",
            "method": "atkd",
            "parameters": 20640,
            "steps": 10,
            "teacher": {
                "validation": {
                    "bits_per_byte": 1.6628736,
                    "bits_per_char": 1.6628736,
                    "perplexity": 42.351445,
                    "rouge_l": 0.0,
                }
            },
            "teacher_parameters": 39200,
            "truncated": {"train": 0},
            "validation": {
                "bits_per_byte": 1.0645156,
                "bits_per_char": 1.0645156,
                "perplexity": 11.001862,
                "rouge_l": 50.669643,
            },
        },
        "weights": [20.0, 167.2540915065547, 184.11075227092167, 3.51331337286139],
    },
    "finetune-causal_lm": {
        "metrics": {
            "best_step": 10,
            "kind": "finetune",
            "method": "finetune",
            "parameters": 20640,
            "steps": 10,
            "truncated": {"train": 0},
            "validation": {
                "bits_per_byte": 1.023792,
                "bits_per_char": 1.023792,
                "perplexity": 10.037471,
                "rouge_l": 49.375,
            },
            "which": "student",
        },
        "weights": [20.0, 167.502596021194, 184.39890177837736, 3.400185596078949],
    },
    "finetune-classifier": {
        "metrics": {
            "best_step": 7,
            "kind": "finetune",
            "method": "finetune",
            "parameters": 999138,
            "steps": 10,
            "truncated": {"train": 0, "validation": 0},
            "validation": {"accuracy": 0.58333333, "f1": 0.73684211, "macro_f1": 0.36842105, "mcc": 0.0},
            "which": "student",
        },
        "weights": [41.0, 143.53259734023214, 561.9059900501012, -6.6379789819903525],
    },
    "forward_kl": {
        "metrics": {
            "best_step": 5,
            "kind": "distill",
            "method": "forward_kl",
            "parameters": 20640,
            "steps": 10,
            "teacher": {
                "validation": {
                    "bits_per_byte": 1.6628736,
                    "bits_per_char": 1.6628736,
                    "perplexity": 42.351445,
                    "rouge_l": 0.0,
                }
            },
            "teacher_parameters": 39200,
            "truncated": {"train": 0},
            "validation": {
                "bits_per_byte": 1.615571,
                "bits_per_char": 1.615571,
                "perplexity": 38.070611,
                "rouge_l": 0.0,
            },
        },
        "weights": [20.0, 159.4622183908832, 170.5573481012945, -1.1873075509903663],
    },
    "jsd": {
        "metrics": {
            "best_step": 5,
            "kind": "distill",
            "method": "jsd",
            "parameters": 20640,
            "steps": 10,
            "teacher": {
                "validation": {
                    "bits_per_byte": 1.6628736,
                    "bits_per_char": 1.6628736,
                    "perplexity": 42.351445,
                    "rouge_l": 0.0,
                }
            },
            "teacher_parameters": 39200,
            "truncated": {"train": 0},
            "validation": {
                "bits_per_byte": 1.614159,
                "bits_per_char": 1.614159,
                "perplexity": 37.949705,
                "rouge_l": 0.0,
            },
        },
        "weights": [20.0, 159.46703705225445, 170.49551258203965, -1.0486858352957664],
    },
    "kd": {
        "metrics": {
            "best_step": 5,
            "kind": "distill",
            "method": "kd",
            "parameters": 999138,
            "steps": 10,
            "teacher": {
                "validation": {"accuracy": 0.41666667, "f1": 0.0, "macro_f1": 0.29411765, "mcc": 0.0}
            },
            "teacher_parameters": 1016226,
            "truncated": {"train": 0, "validation": 0},
            "validation": {
                "accuracy": 0.58333333,
                "agreement": 0.0,
                "f1": 0.73684211,
                "macro_f1": 0.36842105,
                "mcc": 0.0,
            },
        },
        "weights": [41.0, 143.49934445708465, 561.4622361617849, -7.2529040321769855],
    },
    "kd-hidden": {
        "metrics": {
            "best_step": 5,
            "kind": "distill",
            "method": "kd",
            "parameters": 999138,
            "steps": 10,
            "teacher": {
                "validation": {"accuracy": 0.41666667, "f1": 0.0, "macro_f1": 0.29411765, "mcc": 0.0}
            },
            "teacher_parameters": 1016226,
            "truncated": {"train": 0, "validation": 0},
            "validation": {
                "accuracy": 0.58333333,
                "agreement": 0.0,
                "f1": 0.73684211,
                "macro_f1": 0.36842105,
                "mcc": 0.0,
            },
        },
        "weights": [41.0, 141.31644937764855, 560.4092544831922, -10.265558693473938],
    },
    "mixkd": {
        "metrics": {
            "best_step": 1,
            "kind": "distill",
            "method": "mixkd",
            "parameters": 999138,
            "steps": 10,
            "teacher": {
                "validation": {"accuracy": 0.41666667, "f1": 0.0, "macro_f1": 0.29411765, "mcc": 0.0}
            },
            "teacher_parameters": 1016226,
            "truncated": {"train": 0, "validation": 0},
            "validation": {
                "accuracy": 0.41666667,
                "agreement": 1.0,
                "f1": 0.0,
                "macro_f1": 0.29411765,
                "mcc": 0.0,
            },
        },
        "weights": [41.0, 143.50428859719125, 559.1657418581885, -9.856354166534082],
    },
    "on_policy": {
        "metrics": {
            "best_step": 9,
            "kind": "distill",
            "method": "reverse_kl",
            "parameters": 20640,
            "steps": 10,
            "teacher": {
                "validation": {
                    "bits_per_byte": 1.6628736,
                    "bits_per_char": 1.6628736,
                    "perplexity": 42.351445,
                    "rouge_l": 0.0,
                }
            },
            "teacher_parameters": 39200,
            "truncated": {"train": 0},
            "validation": {
                "bits_per_byte": 1.6600524,
                "bits_per_char": 1.6600524,
                "perplexity": 42.083135,
                "rouge_l": 0.0,
            },
        },
        "weights": [20.0, 156.2607471933079, 169.77274941282442, 1.4016189303687105],
    },
    "reaugkd": {
        "metrics": {
            "best_step": 5,
            "kind": "distill",
            "method": "reaugkd",
            "parameters": 999138,
            "retrieval": {
                "validation": {"accuracy": 0.58333333, "f1": 0.73684211, "macro_f1": 0.36842105, "mcc": 0.0}
            },
            "retrieval_diagnostics": {  # added later; derived from the unchanged student, KB and teacher
                "validation": {
                    "agree_student": 0.0,
                    "agree_teacher": 1.0,
                    "examples": 24.0,
                    "k": 4.0,
                    "neighbour_overlap": 0.0,
                    "student_alone": 0.58333333,
                    "student_knn": 0.41666667,
                    "tau": 0.1,
                    "teacher": 0.41666667,
                    "teacher_knn": 0.41666667,
                }
            },
            "steps": 10,
            "teacher": {
                "validation": {"accuracy": 0.41666667, "f1": 0.0, "macro_f1": 0.29411765, "mcc": 0.0}
            },
            "teacher_parameters": 1016226,
            "truncated": {"train": 0, "validation": 0},
            "validation": {
                "accuracy": 0.58333333,
                "agreement": 0.0,
                "f1": 0.73684211,
                "macro_f1": 0.36842105,
                "mcc": 0.0,
            },
        },
        "weights": [41.0, 143.2141292132378, 561.379777404823, -10.533799379270684],
    },
    "reverse_kl": {
        "metrics": {
            "best_step": 5,
            "kind": "distill",
            "method": "reverse_kl",
            "parameters": 20640,
            "steps": 10,
            "teacher": {
                "validation": {
                    "bits_per_byte": 1.6628736,
                    "bits_per_char": 1.6628736,
                    "perplexity": 42.351445,
                    "rouge_l": 0.0,
                }
            },
            "teacher_parameters": 39200,
            "truncated": {"train": 0},
            "validation": {
                "bits_per_byte": 1.6134751,
                "bits_per_char": 1.6134751,
                "perplexity": 37.891281,
                "rouge_l": 0.0,
            },
        },
        "weights": [20.0, 159.46765822854286, 170.55924055517738, -1.1126286464802764],
    },
    "seqkd": {
        "metrics": {
            "best_step": 10,
            "kind": "distill",
            "method": "forward_kl",
            "parameters": 20640,
            "steps": 10,
            "teacher": {
                "validation": {
                    "bits_per_byte": 1.6628736,
                    "bits_per_char": 1.6628736,
                    "perplexity": 42.351445,
                    "rouge_l": 0.0,
                }
            },
            "teacher_parameters": 39200,
            "truncated": {"train": 0},
            "validation": {
                "bits_per_byte": 1.6573811,
                "bits_per_char": 1.6573811,
                "perplexity": 41.830653,
                "rouge_l": 0.0,
            },
        },
        "weights": [20.0, 157.31913721251112, 171.0468451522587, 1.3417957188102285],
    },
    "skew_kl": {
        "metrics": {
            "best_step": 5,
            "kind": "distill",
            "method": "skew_kl",
            "parameters": 20640,
            "steps": 10,
            "teacher": {
                "validation": {
                    "bits_per_byte": 1.6628736,
                    "bits_per_char": 1.6628736,
                    "perplexity": 42.351445,
                    "rouge_l": 0.0,
                }
            },
            "teacher_parameters": 39200,
            "truncated": {"train": 0},
            "validation": {
                "bits_per_byte": 1.6148303,
                "bits_per_char": 1.6148303,
                "perplexity": 38.00714,
                "rouge_l": 0.0,
            },
        },
        "weights": [20.0, 159.4369227121606, 170.5513327946284, -1.1362726046797849],
    },
    "tvd": {
        "metrics": {
            "best_step": 5,
            "kind": "distill",
            "method": "tvd",
            "parameters": 20640,
            "steps": 10,
            "teacher": {
                "validation": {
                    "bits_per_byte": 1.6628736,
                    "bits_per_char": 1.6628736,
                    "perplexity": 42.351445,
                    "rouge_l": 0.0,
                }
            },
            "teacher_parameters": 39200,
            "truncated": {"train": 0},
            "validation": {
                "bits_per_byte": 1.5818686,
                "bits_per_char": 1.5818686,
                "perplexity": 35.287199,
                "rouge_l": 0.0,
            },
        },
        "weights": [20.0, 163.7025399551385, 172.71337708971268, -0.5420816969303364],
    },
}


def test_every_registered_method_has_a_reference_run() -> None:
    named = {config["method"]["name"] for _, config in RUNS.values() if "method" in config}
    assert set(METHODS.names()) <= named
    assert set(REFERENCE) == set(RUNS)


def _close(got: Any, want: Any, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (
            f"{where}: keys {sorted(got)} != {sorted(want)}"
        )
        for key in want:
            _close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6), where
    else:
        assert got == want, where


@pytest.mark.parametrize("name", list(RUNS))
def test_same_weights_and_metrics_as_before(name: str, method_run: Any) -> None:
    got = signature(method_run(name))
    want = REFERENCE[name]
    assert got["weights"] == pytest.approx(want["weights"], rel=1e-4, abs=1e-6)
    _close(got["metrics"], want["metrics"], name)
