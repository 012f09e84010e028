"""safemax inside other tools' harnesses.

Each module here adapts safemax to one outside harness through that harness's own plugin
interface and is imported only by it, through an entry point: the harness is an optional extra,
never a dependency.

| module | harness | registered as |
| --- | --- | --- |
| ``safemax.integrations.eval_unlearn`` | [eval-unlearn](https://pypi.org/project/eval-unlearn/) (``pip install "safemax[eval-unlearn]"``) | the technique ``safemax`` (entry point group ``eval_unlearn.techniques``) |
"""
