"""Measuring a model: forget/retain accuracy, Fréchet distance and noise statistics
(``metrics``), relearning attacks (``attacks``), halting probes (``probes``) and the pictures,
tables and JSON files of a report (``report``)."""
