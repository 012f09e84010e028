"""What several commands share: the embedded-model option, the methods' settings as options, and
the default device."""


def add_dataset(p):
    from safemax.zoo import MODELS
    p.add_argument("--dataset", "--model", dest="dataset", choices=list(MODELS), default="digits",
                   help="which embedded model and data set (default digits; fashion-mnist reads "
                        "Fashion-MNIST's files, see safemax.data.fashion_mnist_files)")


def cuda():
    import torch
    return torch.cuda.is_available()


def add_method_arguments(p):
    """Every method's settings as options, from their dataclasses (``safemax.settings``): SAFEMax's
    first, then each baseline's own; an option left out is None (the method's default)."""
    from safemax.methods import METHODS
    group = p.add_argument_group("method settings (each applies to the methods that have it)")
    seen = set()
    for method in METHODS.values():
        cls = method.settings_class
        fresh = [n for n in cls.names() if n not in seen]
        cls.add_arguments(group, only=fresh)
        seen.update(fresh)


def method_options(args) -> dict:
    """The method settings a command line gives (``add_method_arguments``' options not left out)."""
    from safemax.methods import METHODS
    names = {n for method in METHODS.values() for n in method.settings_class.names()}
    return {n: getattr(args, n) for n in sorted(names) if getattr(args, n, None) is not None}


def add_pipeline_options(p):
    """``--option KEY=VALUE``: a call argument of the pipeline (``pipe(prompt, KEY=VALUE)``)."""
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a call argument of the pipeline for every sample and prompt, e.g. height=512, "
                        "max_sequence_length=77, use_resolution_binning=false (repeat; values are JSON, else text)")


def pipeline_options(args) -> dict:
    """``--option`` values as ``{key: value}`` (JSON values: numbers, true/false; else text)."""
    from safemax.settings import assignments, json_value
    given = assignments(args.option, lambda item: f"--option {item!r}: write KEY=VALUE, e.g. --option height=512")
    return {k: json_value(v) for k, v in given.items()}
