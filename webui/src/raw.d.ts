// Vite's "?raw" imports: a file's text, used by tests that read the stylesheet.
declare module "*.css?raw" {
  const text: string;
  export default text;
}
declare module "*.py?raw" {
  const text: string;
  export default text;
}
