# coin-for-rich: one image for every process of the platform (fetchers, updater, workers, web).
# Stage 1 installs the pinned front-end libraries from package-lock.json, so the pages
# and /api/docs work without internet; stage 2 is the Python runtime.

FROM node:20-bookworm-slim AS assets
WORKDIR /build
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
RUN useradd --create-home --uid 1000 coin
COPY requirements.txt ./
RUN pip install -r requirements.txt
COPY --from=assets /build/node_modules ./node_modules
COPY . .
RUN mkdir -p logs local_data && chown -R coin:coin logs local_data
USER coin
EXPOSE 8000
ENV WEB_HOST=0.0.0.0
CMD ["python", "-m", "web"]
