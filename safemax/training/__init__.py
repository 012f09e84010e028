"""The fit: ``Unlearner`` (the loop, its optimizer and state), what is forgotten
(``conditions``), checkpoints and resume (``checkpoint``), Accelerate's processes
(``parallel``) and the label-free stopping rule (``stopping``)."""
