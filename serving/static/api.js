// Swagger UI on the service's own OpenAPI spec, set up as BentoML's page sets it up, but
// loading nothing from other origins:
// - the online validator badge is off (Swagger UI would load it from validator.swagger.io
//   for any spec not served from localhost);
// - images on other sites are dropped from the spec's description before it is rendered.
//   A Bento's description is its model card; a service run from source gets BentoML's
//   default README, whose badges are images on shields.io and the like.

const LINKED_IMAGE = /\[!\[[^\]]*\]\((?:https?:)?\/\/[^)]*\)\]\([^)]*\)/g; // [![alt](img)](link)
const IMAGE = /!\[[^\]]*\]\((?:https?:)?\/\/[^)]*\)/g; // ![alt](img)

function withoutForeignImages(response) {
  if (!response.ok || !new URL(response.url, document.baseURI).pathname.endsWith("/docs.json")) {
    return response;
  }
  const spec = JSON.parse(response.text);
  const description = spec.info && spec.info.description;
  if (typeof description === "string") {
    spec.info.description = description.replace(LINKED_IMAGE, "").replace(IMAGE, "");
    response.text = JSON.stringify(spec);
    response.body = response.obj = spec;
  }
  return response;
}

window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({
    url: "./docs.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "StandaloneLayout",
    validatorUrl: null,
    responseInterceptor: withoutForeignImages,
  });
});
