from django.contrib import admin

from accounts.models import BaseClass, Membership, Organisation


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Organisation)
class OrganisationAdmin(admin.ModelAdmin):
    organisation_path = "pk"  # whose rows: accounts/tenancy.py
    list_display = ["name", "slug", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]


@admin.register(BaseClass)
class BaseClassAdmin(admin.ModelAdmin):
    organisation_path = "organisation"  # whose rows: accounts/tenancy.py
    list_display = ["name", "organisation", "subject", "created_at"]
    list_filter = ["organisation"]
    search_fields = ["name", "subject", "organisation__name"]
    list_select_related = ["organisation"]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    organisation_path = "organisation"  # whose rows: accounts/tenancy.py
    list_display = ["user", "organisation", "role", "created_at"]
    list_filter = ["role", "organisation"]
    search_fields = ["user__username", "user__email", "organisation__name"]
    list_select_related = ["user", "organisation"]
    autocomplete_fields = ["user", "organisation"]
