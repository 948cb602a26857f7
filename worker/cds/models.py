"""Pydantic models of the CDS Hooks 2.0 messages ordercheck reads and writes.

Requests are read strictly where the specification is strict (hook, hookInstance and context are
required, and typed) and leniently elsewhere: unknown members (extensions, hook-specific context
fields) are kept, not refused. Responses are dumped with `exclude_none`: the specification asks
for optional members to be omitted rather than sent empty.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr


class _In(BaseModel):
    """A member of a request: extra members (extensions) are allowed and ignored."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# -- requests ---------------------------------------------------------------------------------
class FhirAuthorization(_In):
    """The OAuth 2.0 bearer token the client grants for its FHIR server."""

    access_token: StrictStr
    token_type: StrictStr = "Bearer"
    expires_in: StrictInt | None = None
    scope: StrictStr | None = None
    subject: StrictStr | None = None


class OrderContext(_In):
    """The context of order-select and order-sign (CDS Hooks library, version 1.x/2.0)."""

    user_id: StrictStr | None = Field(default=None, alias="userId")
    patient_id: StrictStr | None = Field(default=None, alias="patientId")
    encounter_id: StrictStr | None = Field(default=None, alias="encounterId")
    selections: list[StrictStr] | None = None  # order-select: the newly selected orders
    draft_orders: dict[str, Any] = Field(alias="draftOrders")  # a FHIR Bundle


class HookRequest(_In):
    """A call of a CDS Service (POST {base}/cds-services/{id})."""

    hook: StrictStr = Field(min_length=1)
    hook_instance: StrictStr = Field(alias="hookInstance", min_length=1)
    fhir_server: StrictStr | None = Field(default=None, alias="fhirServer")
    fhir_authorization: FhirAuthorization | None = Field(default=None, alias="fhirAuthorization")
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None


class Coding(_Out):
    system: str | None = None
    code: str
    display: str | None = None


class OverrideReasonIn(_In):
    reason: dict[str, Any] | None = None  # a Coding
    user_comment: StrictStr | None = Field(default=None, alias="userComment")


class AcceptedSuggestion(_In):
    id: StrictStr


class FeedbackItem(_In):
    card: StrictStr = Field(min_length=1)
    outcome: Literal["accepted", "overridden"]
    accepted_suggestions: list[AcceptedSuggestion] | None = Field(
        default=None, alias="acceptedSuggestions"
    )
    override_reason: OverrideReasonIn | None = Field(default=None, alias="overrideReason")
    outcome_timestamp: StrictStr | None = Field(default=None, alias="outcomeTimestamp")


class FeedbackRequest(_In):
    feedback: list[FeedbackItem] = Field(min_length=1)


# -- responses --------------------------------------------------------------------------------
class ServiceDefinition(_Out):
    hook: str
    title: str
    description: str
    id: str
    prefetch: dict[str, str] | None = None
    usage_requirements: str | None = Field(default=None, alias="usageRequirements")


class Discovery(_Out):
    services: list[ServiceDefinition]


class Source(_Out):
    label: str
    url: str | None = None
    topic: Coding | None = None


class Action(_Out):
    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resource_id: str | None = Field(default=None, alias="resourceId")


class Suggestion(_Out):
    label: str
    uuid: str | None = None
    is_recommended: bool | None = Field(default=None, alias="isRecommended")
    actions: list[Action] | None = None


class Link(_Out):
    label: str
    url: str
    type: Literal["absolute", "smart"] = "absolute"


class Card(_Out):
    uuid: str | None = None
    summary: str = Field(max_length=139)
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] | None = None
    selection_behavior: Literal["at-most-one", "any"] | None = Field(
        default=None, alias="selectionBehavior"
    )
    override_reasons: list[Coding] | None = Field(default=None, alias="overrideReasons")
    links: list[Link] | None = None
    extension: dict[str, Any] | None = None


class CardsResponse(_Out):
    cards: list[Card] = Field(default_factory=list)

    def dump(self) -> dict[str, Any]:
        data = super().dump()
        data.setdefault("cards", [])  # an empty list is the answer "no guidance"
        return data
