"""Admin tenancy: organisation administrators see and act only on their organisations' objects.

Staff are platform operators by default. Staff in the group "Organisation administrators" (and not
superusers) are organisation administrators: every admin page is filtered to the organisations
they hold the admin role in (Membership rows). See docs/admin.md.

Each ModelAdmin says where its rows' organisation is with `organisation_path` (a lookup ending at
an Organisation, "pk" for Organisation itself, or a tuple of lookups any of which may match).
`scope_admin_site` wraps every registered ModelAdmin in OrganisationScoped when the app registry
is ready, so an admin added later is covered too; one that declares no path is platform-only:
organisation administrators get no page, no row and no permission on it (fails closed).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import get_fields_from_path
from django.contrib.auth import get_user_model
from django.db.models import Model, Q, QuerySet
from django.http import Http404, HttpRequest

from accounts.selectors import administered_organisation_ids, is_organisation_admin

# Admins of other apps (Django's, DRF's) that cannot say it themselves: where their rows'
# organisation is, or None (platform-only); and which are read-only for organisation admins.
THIRD_PARTY_PATHS: dict[str, str | None] = {
    "auth.user": "memberships__organisation",
    "auth.group": None,
    "authtoken.tokenproxy": None,
}
READ_ONLY_FOR_ORGANISATION_ADMINS = {"auth.user"}


def organisation_filter(path: str | tuple[str, ...], organisation_ids: list[Any]) -> Q:
    paths = (path,) if isinstance(path, str) else path
    condition = Q(pk__in=[])
    for one in paths:
        condition |= Q(**{f"{one}__in": organisation_ids})
    return condition


def _path_of(model_admin: admin.ModelAdmin) -> str | tuple[str, ...] | None:
    label = model_admin.model._meta.label_lower
    if label in THIRD_PARTY_PATHS:
        return THIRD_PARTY_PATHS[label]
    return getattr(model_admin, "organisation_path", None)


class VisibleChoices(admin.options.BaseModelAdmin):
    """Form choices (foreign keys, many-to-many) limited, for an organisation administrator, to
    the rows they can see; mixed into every scoped admin and inline."""

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        kwargs = _visible_choices(db_field, request, kwargs)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        kwargs = _visible_choices(db_field, request, kwargs)
        return super().formfield_for_manytomany(db_field, request, **kwargs)


class OrganisationScoped(VisibleChoices, admin.ModelAdmin):
    """Mixed in before a ModelAdmin's own class (see scope_admin_site)."""

    def _scoped(self, request: HttpRequest) -> bool:
        return is_organisation_admin(request.user)

    def _platform_only(self, request: HttpRequest) -> bool:
        return self._scoped(request) and _path_of(self) is None

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)
        if not self._scoped(request):
            return queryset
        path = _path_of(self)
        if path is None:
            return queryset.none()
        ids = administered_organisation_ids(request.user)
        scoped = queryset.filter(organisation_filter(path, ids))
        # A path through a to-many relation (a user's memberships) may repeat a row.
        many = any("memberships" in p for p in ((path,) if isinstance(path, str) else path))
        return scoped.distinct() if many else scoped

    def has_module_permission(self, request: HttpRequest) -> bool:
        return not self._platform_only(request) and super().has_module_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not self._platform_only(request) and super().has_view_permission(request, obj)

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        if self._read_only_for(request):
            return False
        return super().has_add_permission(request, *args)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not self._read_only_for(request) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not self._read_only_for(request) and super().has_delete_permission(request, obj)

    def _read_only_for(self, request: HttpRequest) -> bool:
        label = self.model._meta.label_lower
        return self._platform_only(request) or (
            self._scoped(request) and label in READ_ONLY_FOR_ORGANISATION_ADMINS
        )

    def _get_obj_does_not_exist_redirect(
        self, request: HttpRequest, opts: Any, object_id: str
    ) -> Any:
        # Another organisation's object is simply not there: 404, not a hint on the index.
        if self._scoped(request):
            raise Http404("No such object.")
        return super()._get_obj_does_not_exist_redirect(request, opts, object_id)  # type: ignore[misc]

    def get_inlines(self, request: HttpRequest, obj: Any) -> Any:
        # An inline's forms pick foreign keys too (a membership's user): the same choices.
        return [_scoped_inline(inline) for inline in super().get_inlines(request, obj)]

    def get_list_filter(self, request: HttpRequest) -> Any:
        filters = super().get_list_filter(request)
        if not self._scoped(request):
            return filters
        # A relation's filter would list every organisation's rows: only those in the changelist.
        return [_related_only(self.model, f) for f in filters]


class ScopedInline(VisibleChoices, admin.options.InlineModelAdmin):
    """Mixed in before an inline's own class (see OrganisationScoped.get_inlines)."""


def _visible_choices(db_field: Any, request: HttpRequest, kwargs: dict[str, Any]) -> dict[str, Any]:
    if is_organisation_admin(request.user) and "queryset" not in kwargs:
        kwargs["queryset"] = visible_rows(db_field.remote_field.model, request)
    return kwargs


_SCOPED_INLINES: dict[type, type] = {}


def _scoped_inline(inline: type) -> type:
    if issubclass(inline, ScopedInline):
        return inline
    if inline not in _SCOPED_INLINES:
        _SCOPED_INLINES[inline] = type(
            inline.__name__, (ScopedInline, inline), {"__module__": inline.__module__}
        )
    return _SCOPED_INLINES[inline]


def _related_only(model: type[Model], list_filter: Any) -> Any:
    if not isinstance(list_filter, str):
        return list_filter
    field = get_fields_from_path(model, list_filter)[-1]
    if field.is_relation:
        return (list_filter, admin.RelatedOnlyFieldListFilter)
    return list_filter


def visible_rows(model: type[Model], request: HttpRequest) -> QuerySet[Any]:
    """The rows of `model` the request's organisation administrator may pick in a form: those
    its admin shows them; none when it has no admin."""
    model_admin = admin.site._registry.get(model)
    if model_admin is None:
        if model is get_user_model():
            ids = administered_organisation_ids(request.user)
            return model._default_manager.filter(memberships__organisation__in=ids).distinct()
        return model._default_manager.none()
    return model_admin.get_queryset(request)


def scope_admin_site(site: admin.AdminSite) -> None:
    """Wrap every registered ModelAdmin in OrganisationScoped (once)."""
    for model, model_admin in list(site._registry.items()):
        if isinstance(model_admin, OrganisationScoped):
            continue
        cls = type(model_admin)
        scoped = type(cls.__name__, (OrganisationScoped, cls), {"__module__": cls.__module__})
        site._registry[model] = scoped(model, site)
