"""data: the corpora (SPEC §2). Downloads with mirrors and checksums, the
offline sample built from a wheel's Wikipedia dump, a user's own files, the
tokenised cache, and the tensor layouts the training core reads (batchify,
windows).

Imports: the standard library, torch and tprop_exp (UserError) only; nothing
from core, run or report.
"""
