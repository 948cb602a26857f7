"""Whether an order is evaluated by the thigh soft-tissue mass guideline (guideline.md s. 2).

Not a rule: a gate. Out-of-scope orders are `no-criteria-apply` and the reason says why.
"""

from __future__ import annotations

from worker.models import Order, OrderFacts

# ORC-1 (table 0119) of an order the guideline judges: NW new, XO change, RO the replacement
# order of a replace pair (the RP/RU group beside it is the order being replaced, not judged);
# empty: an OBR-only order in old feeds.
NEW_ORDER_CONTROLS = ("NW", "XO", "RO", "")
_IMAGING = ("radiograph", "us", "ct", "cta", "mri", "mra")
_LIMB = ("thigh", "lower_extremity", "knee", "hip", "unknown")


def in_scope(order: Order, facts: OrderFacts) -> tuple[bool, str]:
    """(True, summary) when the guideline applies, else (False, the reason it does not)."""
    if order.order_control not in NEW_ORDER_CONTROLS:
        return False, f"order control {order.order_control} (ORC-1) is not a new order"
    if order.order_status == "CM":
        return False, "the order is completed (ORC-5 CM): it enters the history"
    if not facts.adult:
        return False, f"patient is {facts.age_years} years old: paediatric pathways apply"
    cls = facts.procedure_class
    if cls in _IMAGING:
        if facts.region not in _LIMB:
            return False, f"{cls} of the {facts.region.replace('_', ' ')} is not thigh imaging"
    elif cls == "biopsy":
        if facts.region not in (*_LIMB, "whole_body"):
            return False, f"biopsy of the {facts.region.replace('_', ' ')}"
    elif cls != "pet":
        return False, f"procedure class {cls} is not covered"
    if facts.bone_lesion:
        return False, "the indication is a bone lesion, not a soft-tissue mass"
    if not facts.mass:
        return False, "the indication is not a soft-tissue mass"
    if not facts.thigh_site:
        return False, "the mass is not in the thigh"
    return True, f"{cls} for an adult soft-tissue mass of the thigh"
