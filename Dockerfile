# CPU image for web, the CPU workers, beat and migrate. Dockerfile.gpu is the gpu-worker's image.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 SORA_DATA_DIR=/data
RUN apt-get update && apt-get install -y --no-install-recommends build-essential && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt requirements-nodeps.txt ./
# The CPU build of torch (PyPI's default build for Linux carries CUDA).
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt \
 && pip install --no-cache-dir --no-deps -r requirements-nodeps.txt
COPY . .
RUN DJANGO_SETTINGS_MODULE=sora_web.settings.local python manage.py collectstatic --noinput --verbosity 0
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "sora_web.asgi:application"]
