"""The drafter interface lives in `specvlm.drafting` (drafters depend on specvlm, never the reverse)."""

from specvlm.drafting import Drafter, DraftSession

__all__ = ["DraftSession", "Drafter"]
