"""tprop_exp: reproduce and extend the experiments of Wiseman et al. (2017),
*Training Language Models Using Target-Propagation*."""

__version__ = "0.1.0"


class UserError(Exception):
    """Bad input from the user (config, data files, run folders).

    The message is one line meant for a person; the command line prints it to
    stderr and exits with status 2, writing no result.
    """
