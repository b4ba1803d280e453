"""grpo.py's CLI with its scorer replaced by a reward on the completion's length (tests/test_distributed.py).

    python tests/grpo_length_reward.py [grpo.py options]

The tiny random test model writes text that reward.py scores 0 every time: every group ties and
GRPO never trains. A reward that varies within groups makes a 2-rank run actually update the LoRA,
so an interrupted-and-resumed run can be compared with an uninterrupted one.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpo  # noqa: E402


def length_scorer(query, text, truncated=False):
    return (len(text) % 5) / 4, True


if __name__ == "__main__":
    run_grpo = grpo.run_grpo
    grpo.run_grpo = lambda cfg, **kw: run_grpo(cfg, scorer=length_scorer, **kw)  # what the CLI calls
    grpo.cli()
