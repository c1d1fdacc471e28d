// Draws the site's math with KaTeX (docs/vendor/katex, served by the site
// itself: no page loads anything from another site).
// - pymdownx.arithmatex (generic mode) wraps docstring and page math as
//   <span class="arithmatex">\(...\)</span> and <div class="arithmatex">\[...\]</div>;
// - the notebooks' Markdown cells (mkdocs-jupyter) keep $...$ and $$...$$.
// Only those elements are touched, so any other "$" in the text is left alone.
// document$ re-runs this after mkdocs-material's instant navigation.
document$.subscribe(({ body }) => {
  body.querySelectorAll(".arithmatex").forEach((el) => {
    renderMathInElement(el, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
      throwOnError: false,
    });
  });
  body.querySelectorAll(".jp-RenderedMarkdown").forEach((el) => {
    renderMathInElement(el, {
      delimiters: [
        { left: "$$", right: "$$", display: true },
        { left: "$", right: "$", display: false },
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
      throwOnError: false,
    });
  });
});
