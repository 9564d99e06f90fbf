import os
import threading

from django.db import transaction
from django.http import JsonResponse

from shop.models import Counter

# Test hook: with SHOP_LINE_UP=N, every N requests wait for each other between their read and
# their write, so that all of them have read before any of them writes.
_parties = int(os.environ.get("SHOP_LINE_UP") or 0)
_line_up = threading.Barrier(_parties) if _parties else None


def bump(request):
    with transaction.atomic():  # MARK: atomic
        counter = Counter.objects.get(name="hits")  # MARK: read
        if _line_up is not None:
            _line_up.wait(timeout=60)
        counter.value += 1
        counter.save(update_fields=["value"])  # MARK: write
    return JsonResponse({"value": counter.value})
