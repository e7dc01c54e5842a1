# Render a BOSH job's templates the way the director does, closely enough for tests.
#
#   ruby erb_shim.rb JOB_DIR PROPERTIES_JSON OUT_DIR [INSTANCE_JSON]
#
# PROPERTIES_JSON holds the manifest's job properties (nested, as in a manifest). Like the
# director, the shim resolves every property the job spec declares (manifest value, else the
# spec default, else nil) and hands the templates only those; unlike the director it fails on a
# manifest property the spec does not declare, so a typo in a test manifest cannot pass
# silently. INSTANCE_JSON overrides the fields of `spec` (name, id, index, address, ...).
# Each template of the spec's `templates:` map is rendered with ERB (trim mode "-") into
# OUT_DIR/<destination>, and the job's monit file into OUT_DIR/monit. Errors go to stderr
# with exit status 1.
#
# Stands in for bosh-template's EvaluationContext: p(), if_p() with .else, spec. Not links.

require "erb"
require "fileutils"
require "json"
require "yaml"

class UnknownProperty < StandardError; end

# The `spec` object templates see.
Instance = Struct.new(:name, :id, :index, :address, :ip, :deployment, :az, :bootstrap,
                      keyword_init: true)

# if_p's answer, so that `if_p("a") { ... }.else { ... }` works as in bosh-template.
class ElseBlock
  def initialize(active)
    @active = active
  end

  def else
    yield if @active
  end
end

class Context
  attr_reader :spec

  def initialize(properties, instance)
    @properties = properties
    @spec = instance
  end

  # p(name) or p(name, default): the property's value; without a default an unset property
  # fails the rendering, as bosh-template's UnknownProperty does.
  def p(*args)
    names = Array(args[0])
    names.each do |name|
      value = @properties[name]
      return value unless value.nil?
    end
    return args[1] if args.length == 2

    raise UnknownProperty, "Can't find property '#{names.join("', '")}'"
  end

  # Yields the values when every named property is set (by the manifest or a spec default).
  def if_p(*names)
    values = names.map { |name| @properties[name] }
    return ElseBlock.new(true) if values.any?(&:nil?)

    yield(*values)
    ElseBlock.new(false)
  end

  def render(source)
    ERB.new(source, trim_mode: "-").result(binding)
  end
end

def lookup(tree, dotted)
  dotted.split(".").reduce(tree) do |node, key|
    return nil unless node.is_a?(Hash) && node.key?(key)

    node[key]
  end
end

# The dotted names of the leaves of a nested manifest hash (a hash value the spec declares as
# one property, e.g. a certificate triple, counts as a leaf).
def leaves(tree, declared, prefix = "")
  tree.flat_map do |key, value|
    name = "#{prefix}#{key}"
    if value.is_a?(Hash) && !declared.include?(name)
      leaves(value, declared, "#{name}.")
    else
      [name]
    end
  end
end

def main(job_dir, properties_json, out_dir, instance_json = nil)
  job = YAML.safe_load(File.read(File.join(job_dir, "spec")))
  declared = job.fetch("properties") || {}
  manifest = JSON.parse(File.read(properties_json))
  unknown = leaves(manifest, declared.keys).reject { |name| declared.key?(name) }
  raise UnknownProperty, "not in the job spec: #{unknown.join(", ")}" unless unknown.empty?

  properties = declared.to_h do |name, definition|
    value = lookup(manifest, name)
    [name, value.nil? ? (definition || {})["default"] : value]
  end
  fields = {
    name: "pcapd", id: "d55baeba-6a1c-4c35-9d38-13ae6e1b1a3e", index: 0,
    address: "10.0.16.5", ip: "10.0.16.5", deployment: "cf", az: "z1", bootstrap: true,
  }
  fields.merge!(JSON.parse(File.read(instance_json)).transform_keys(&:to_sym)) if instance_json
  context = Context.new(properties, Instance.new(**fields))

  # The director renders the monit file with ERB too.
  sources = job.fetch("templates").map { |src, dst| [File.join(job_dir, "templates", src), dst] }
  sources << [File.join(job_dir, "monit"), "monit"] if File.exist?(File.join(job_dir, "monit"))
  sources.each do |source, destination|
    text = context.render(File.read(source))
    target = File.join(out_dir, destination)
    FileUtils.mkdir_p(File.dirname(target))
    File.write(target, text)
  end
end

begin
  abort "usage: #{$PROGRAM_NAME} JOB_DIR PROPERTIES_JSON OUT_DIR [INSTANCE_JSON]" unless
    (3..4).cover?(ARGV.length)
  main(*ARGV)
rescue StandardError => e
  warn "#{e.class}: #{e.message}"
  exit 1
end
