"""A small Django REST Framework shop, served by gunicorn in tests/test_origins.py.

Everything absolute in its answers is built by Django and DRF from the request's Host header, as in
a real deployment: the API root (DRF's DefaultRouter), the `next`/`previous` links of
PageNumberPagination, each item's `url`, a redirect's Location, and an HTML page with a canonical
`<link href>` and a protocol-relative link. One link points at another service and never changes.

SHOP_REGRESSION=1 starts a version with two deliberate regressions: the `next` link skips a page,
and item 7 is renamed.

    gunicorn --chdir tests/apps drf_shop:application -b 127.0.0.1:8000
"""

from __future__ import annotations

import os

import django
from django.conf import settings

REGRESSION = os.environ.get("SHOP_REGRESSION") == "1"

settings.configure(
    DEBUG=False,
    SECRET_KEY="not-a-secret: a test app",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["rest_framework"],
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
    DATABASES={},
    USE_TZ=True,
    REST_FRAMEWORK={
        "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
        "DEFAULT_AUTHENTICATION_CLASSES": [],
        "DEFAULT_PERMISSION_CLASSES": [],
        "UNAUTHENTICATED_USER": None,
        "PAGE_SIZE": 5,
    },
)
django.setup()

from django.http import HttpResponse, HttpResponseRedirect  # noqa: E402
from django.urls import include, path  # noqa: E402
from rest_framework import pagination, routers, serializers, viewsets  # noqa: E402
from rest_framework.reverse import reverse  # noqa: E402
from rest_framework.utils.urls import replace_query_param  # noqa: E402

ITEMS = [{"id": i, "name": f"Widget {i}", "price": f"{i * 1.25:.2f}"} for i in range(1, 24)]
if REGRESSION:
    ITEMS[6] = {**ITEMS[6], "name": "Widget seven"}


class ItemSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    price = serializers.DecimalField(max_digits=6, decimal_places=2)
    url = serializers.SerializerMethodField()
    docs = serializers.SerializerMethodField()

    def get_url(self, item) -> str:
        return reverse("item-detail", args=[item["id"]], request=self.context["request"])

    def get_docs(self, item) -> str:
        return f"https://docs.example.org/widgets/{item['id']}"  # another service: not this app's origin


class Pages(pagination.PageNumberPagination):
    def get_next_link(self):
        link = super().get_next_link()
        if REGRESSION and link is not None:
            return replace_query_param(link, self.page_query_param, self.page.next_page_number() + 1)
        return link


class ItemViewSet(viewsets.ViewSet):
    def list(self, request):
        pages = Pages()
        page = pages.paginate_queryset(ITEMS, request, view=self)
        return pages.get_paginated_response(ItemSerializer(page, many=True, context={"request": request}).data)

    def retrieve(self, request, pk=None):
        from rest_framework.response import Response

        item = next((i for i in ITEMS if str(i["id"]) == pk), None)
        if item is None:
            return Response({"detail": "Not found."}, status=404)
        return Response(ItemSerializer(item, context={"request": request}).data)


def latest(request):
    """A redirect to an absolute URL (Location built from Host)."""
    return HttpResponseRedirect(request.build_absolute_uri(f"/api/items/{ITEMS[-1]['id']}/"))


def home(request):
    """HTML with absolute and protocol-relative links, and a Link header."""
    canonical = request.build_absolute_uri("/")
    host = request.get_host()
    html = (f'<!doctype html>\n<html><head><link rel="canonical" href="{canonical}">\n'
            f'<link rel="stylesheet" href="//{host}/static/shop.css"></head>\n'
            f'<body><a href="{canonical}api/items/">items</a>\n'
            f'<a href="https://docs.example.org/">docs</a></body></html>\n')
    response = HttpResponse(html, content_type="text/html; charset=utf-8")
    response["Link"] = f'<{canonical}api/>; rel="api"'
    response["Content-Location"] = canonical
    return response


router = routers.DefaultRouter()
router.register("items", ItemViewSet, basename="item")
urlpatterns = [path("", home), path("latest", latest), path("api/", include(router.urls))]

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
